"""What the tiers share: builders of tiny data, params and models."""
