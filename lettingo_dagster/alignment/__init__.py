"""Stage 3, preference alignment: preference pairs and the DPO-trained generator."""
