"""Fine-tuning a table's CLIP model on the table's own captioned rows (see `run_finetune`)."""
