"""smart_data_models package."""
