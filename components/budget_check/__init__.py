"""The budget_check step: refuse a run that would overspend its dataset's lifetime budget."""
