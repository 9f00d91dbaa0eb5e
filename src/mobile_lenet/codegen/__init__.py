"""C generation: the memory plan, the float and int8 C libraries, the firmware projects."""
