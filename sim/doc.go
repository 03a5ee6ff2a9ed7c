// Package sim holds shoal's experiments: how it behaves on a bad network,
// checked against theory and published results.
//
// System experiments run the real server and client code (real raft
// groups on disk) with clients talking to nodes over the simulated network
// of package wire (drop, duplicate, delay, reorder, partition; seeded).
// Model experiments put the client's own Picker implementations into a
// discrete-event queueing simulation of many servers, to compare balancing
// strategies at scales one machine cannot run for real.
//
// Every experiment returns a Report: tables, figures, and checks of each
// measurement (a mean with its 95% confidence interval over seeds) against
// the value theory or a published result predicts and the band it must
// fall in. `shoal sim EXPERIMENT` prints the report, writes its CSV and PNG
// files, and exits non-zero when a check fails.
package sim
