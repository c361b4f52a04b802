"""Reading and writing checkpoints and videos."""
