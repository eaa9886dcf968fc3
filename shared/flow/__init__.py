"""Flow control: token budgets and their ledger, rate limits, and the admission of a submit."""
