//go:build race

package stack

// raceEnabled reports a build with the race detector, whose sync.Pool
// drops a share of what is put back at random: allocation counts of a
// path that pools many buffers per operation mean nothing then.
const raceEnabled = true
