"""Model loading (diffusers layout), the tiny SD-topology model and its pretraining."""
