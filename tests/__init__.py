"""powerlb tests, sorted by kind: unit/, inproc/, process/; shared helpers in support/."""
