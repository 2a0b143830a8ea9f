"""Pure tensor math of the RL losses (GRPO advantages, clipped policy loss, KL, Flow-GRPO, SRUM). Empty until the
GvU issue lands."""
