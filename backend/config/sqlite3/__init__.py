"""SQLite for processes with many threads (ENGINE "config.sqlite3"): see `config.sqlite3.base`."""
