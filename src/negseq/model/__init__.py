"""Jagged ops, STU layers, the HSTU match model, loss, metrics and export."""
