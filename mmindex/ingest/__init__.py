"""Getting images into a table: sources list items, plan keeps only what changed, steps load (read,
decode, preprocess), caption and embed one chunk each, and the pipeline chains them into the writer."""
