"""The commission rules as pure functions over plain data: ledger, money math, config, alignment."""
