"""The assistance types shipped with the programme, each one plugin."""
