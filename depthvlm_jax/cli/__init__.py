"""absl entry points behind the console scripts."""
