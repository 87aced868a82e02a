"""What every process of the product needs: JSON log lines, console lines, dying with the parent,
blocking calls bounded in time. Imports nothing of the project."""
