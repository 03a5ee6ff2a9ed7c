package sim

import (
	"math"
	"math/rand/v2"

	"github.com/shoal-kv/shoal/client"
)

// dispatch is the model of the herd experiment: servers FIFO servers with
// exponential(1) service times, Poisson arrivals at rate lambda*servers,
// each sent to the server a picker chooses from the loads (jobs queued or
// in service) the servers last reported.
type dispatch struct {
	servers int
	lambda  float64
	// period is how often the reports of all servers are refreshed
	// together; 0 means the picker always sees the current loads.
	period float64
	// warmup arrivals come first; the next measured ones are measured.
	warmup, measured int
}

// run simulates the model and returns the mean time in system of the
// measured jobs. Service times are drawn on arrival, so a run's arrival
// times and service times depend only on rng, whatever the picker.
func (d dispatch) run(picker client.Picker, rng *rand.Rand) float64 {
	load := make([]float64, d.servers)
	reported := load
	if d.period > 0 {
		reported = make([]float64, d.servers)
	}
	// free is when each server finishes the jobs it has: under FIFO a
	// job's departure is known when it arrives.
	free := make([]float64, d.servers)
	deps := make(departures, 0, 4*d.servers)
	rate := d.lambda * float64(d.servers)
	nextArrival := rng.ExpFloat64() / rate
	nextReport := math.Inf(1)
	if d.period > 0 {
		nextReport = d.period
	}
	var total float64
	for k := 0; k < d.warmup+d.measured; {
		switch {
		case len(deps) > 0 && deps[0].at <= nextArrival && deps[0].at <= nextReport:
			load[deps.pop().server]--
		case nextReport <= nextArrival:
			copy(reported, load)
			nextReport += d.period
		default:
			now := nextArrival
			s := picker.Pick(reported)
			done := math.Max(now, free[s]) + rng.ExpFloat64()
			free[s] = done
			load[s]++
			deps.push(departure{at: done, server: int32(s)})
			if k >= d.warmup {
				total += done - now
			}
			k++
			nextArrival = now + rng.ExpFloat64()/rate
		}
	}
	return total / float64(d.measured)
}

// departure is a job's departure from a server.
type departure struct {
	at     float64
	server int32
}

// departures is a binary min-heap by time.
type departures []departure

func (h *departures) push(d departure) {
	*h = append(*h, d)
	q := *h
	i := len(q) - 1
	for i > 0 {
		parent := (i - 1) / 2
		if q[parent].at <= d.at {
			break
		}
		q[i] = q[parent]
		i = parent
	}
	q[i] = d
}

func (h *departures) pop() departure {
	q := *h
	top, last := q[0], q[len(q)-1]
	q = q[:len(q)-1]
	*h = q
	i := 0
	for {
		child := 2*i + 1
		if child >= len(q) {
			break
		}
		if child+1 < len(q) && q[child+1].at < q[child].at {
			child++
		}
		if last.at <= q[child].at {
			break
		}
		q[i] = q[child]
		i = child
	}
	if len(q) > 0 {
		q[i] = last
	}
	return top
}
