"""Model zoo (architectures x encoders) and the self-describing trained-model folder."""
