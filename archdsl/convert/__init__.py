"""Converters into archdsl specs: Megatron-Core hybrid patterns and Hugging Face configs."""
