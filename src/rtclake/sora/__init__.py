"""WebRTC SFU Sora: its tables, and the shapes of its logs, webhooks and API answers."""
