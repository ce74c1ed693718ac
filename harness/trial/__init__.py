"""One trial inside its own process: measure a subject, summarise its repeats, keep a record."""
