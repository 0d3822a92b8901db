"""The models: finding them (hub id, directory, toy name), their number format on each device, the CLIP
embedder, the captioner, and the image preprocessing that reproduces their processors."""
