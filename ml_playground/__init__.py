"""ml-playground: prepare text, train small GPTs, fine-tune with LoRA, sample and export."""
