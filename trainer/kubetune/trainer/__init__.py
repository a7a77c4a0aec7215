"""The kubetune trainer: from raw data to an evaluated, saved fine-tuned model, on one or many processes."""
