//go:build !race

package extproc

// raceDetector reports a build with the race detector, whose stacks differ.
const raceDetector = false
