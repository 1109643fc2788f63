"""Rendezvous channels: how ranks exchange headers, descriptors and acks."""
