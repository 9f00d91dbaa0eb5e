"""int8 post-training quantization: the arithmetic, the quantized model, and how it is made."""
