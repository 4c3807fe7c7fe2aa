package failover

// SetTestBeforeBatch has f run in the session reader after each read,
// before the frames read are handled (nil removes it): a test can stall
// the reader.
func (n *Node) SetTestBeforeBatch(f func()) {
	if f == nil {
		n.testBeforeBatch.Store(nil)
		return
	}
	n.testBeforeBatch.Store(&f)
}

// SetMaxHeldIn lowers the bound on a lagging standby's held bytes for
// one test.
func SetMaxHeldIn(t interface{ Cleanup(func()) }, n int) {
	old := maxHeldIn
	maxHeldIn = n
	t.Cleanup(func() { maxHeldIn = old })
}
