"""Noise schedules, v-prediction conversions, samplers and guidance."""
