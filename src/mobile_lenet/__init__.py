"""Mobile-LeNet from training all the way to a microcontroller, every step checked on the host."""
