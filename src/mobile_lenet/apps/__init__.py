"""What a user runs: the CLI verbs, the main job, the report, the demo, the device client."""
