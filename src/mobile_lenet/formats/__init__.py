"""Files a model is read from and written to: Noodle, Keras, ONNX, the int8 folder, MODEL arguments."""
