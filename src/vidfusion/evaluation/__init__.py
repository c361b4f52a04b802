"""Evaluation: `adherence` scores a video against a prompt's colour/shape/motion/count with classical vision, so
prompt adherence is measured without a learned judge."""
