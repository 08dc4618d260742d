"""The active-learning loop (``aloe run``): generate -> screen -> select -> label -> train, iteration after iteration."""
