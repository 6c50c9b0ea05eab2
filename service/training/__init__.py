"""LoRA fine-tuning: synthetic datasets (flow, sql, tenants) and the trainer behind `nl2dsl train`."""
