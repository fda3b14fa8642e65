"""cli: argument parsing and presentation, the only place terminal concerns live. Imports
anything below it."""
