"""Training through DeepSpeed engines: one CPU process by default, many GPUs with the deepspeed launcher."""
