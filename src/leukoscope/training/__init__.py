"""Two-phase transfer learning: profiles, augmentation, caches, checkpoints and the trainer."""
