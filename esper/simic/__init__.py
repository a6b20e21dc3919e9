"""Simic: the RL training around Tamiyo (environments, features, rewards, the vectorized runner, the PPO loop)."""
