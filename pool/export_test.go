package pool

// NewMemStore gives the in-memory store to the external contract test.
func NewMemStore() Store { return newMemStore() }
