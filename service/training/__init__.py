"""LoRA fine-tuning: the trainer behind `nl2dsl train` (its data comes from service.demo_data or a tenant)."""
