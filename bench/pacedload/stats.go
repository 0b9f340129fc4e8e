package main

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// window is the measured part of a run, in wall-clock Unix nanoseconds, [start, end).
type window struct{ start, end int64 }

func (w window) holds(at int64) bool { return at >= w.start && at < w.end }

// recorder collects what one slot saw inside the window; each slot has its own (no locks),
// merged at the end.
type recorder struct {
	window       window
	tokens       int
	messages     int
	multi        int     // messages that carried more than one token (coalesced deltas)
	added        []int64 // per consecutive pair of tokens: caller gap − upstream gap, ns
	lateness     []int64 // per token: arrival − upstream send time, ns
	upstreamGaps []int64 // per consecutive pair: the gap the upstream put between them, ns
	firstTokens  []int64 // per stream: its first token's arrival − the call's start, ns
	completed    int
	errors       map[string]int
	errorsBefore int // errors before the window (ramp, warm-up)
}

func newRecorder(w window) *recorder {
	return &recorder{window: w, errors: map[string]int{}}
}

func (r *recorder) fail(at int64, kind string) {
	switch {
	case r.window.holds(at):
		r.errors[kind]++
	case at < r.window.start:
		r.errorsBefore++
	}
}

func (r *recorder) merge(other *recorder) {
	r.tokens += other.tokens
	r.messages += other.messages
	r.multi += other.multi
	r.added = append(r.added, other.added...)
	r.lateness = append(r.lateness, other.lateness...)
	r.upstreamGaps = append(r.upstreamGaps, other.upstreamGaps...)
	r.firstTokens = append(r.firstTokens, other.firstTokens...)
	r.completed += other.completed
	r.errorsBefore += other.errorsBefore
	for kind, count := range other.errors {
		r.errors[kind] += count
	}
}

// stream is one stream's token bookkeeping. Each token's content is the upstream's send time,
// "t<unix-ns> "; one received message may carry several (coalesced deltas): each gets the
// message's arrival time.
type stream struct {
	started                int64  // when the call was made
	carry                  string // a stamp cut at the message's end, completed by the next one
	prevArrival, prevStamp int64
	tokens                 int
}

// feed takes one received message's text, which arrived at `arrival`.
func (s *stream) feed(text string, arrival int64, r *recorder) error {
	text = s.carry + text
	end := strings.LastIndexByte(text, ' ')
	s.carry = text[end+1:]
	found := 0
	for _, field := range strings.Fields(text[:end+1]) {
		stamp, err := parseStamp(field)
		if err != nil {
			return err
		}
		s.token(arrival, stamp, r)
		found++
	}
	if found > 0 && r.window.holds(arrival) {
		r.messages++
		if found > 1 {
			r.multi++
		}
	}
	return nil
}

func (s *stream) token(arrival, stamp int64, r *recorder) {
	if r.window.holds(arrival) {
		r.tokens++
		r.lateness = append(r.lateness, arrival-stamp)
		if s.tokens > 0 {
			r.added = append(r.added, (arrival-s.prevArrival)-(stamp-s.prevStamp))
			r.upstreamGaps = append(r.upstreamGaps, stamp-s.prevStamp)
		} else {
			r.firstTokens = append(r.firstTokens, arrival-s.started)
		}
	}
	s.prevArrival, s.prevStamp = arrival, stamp
	s.tokens++
}

func parseStamp(field string) (int64, error) {
	if len(field) < 2 || field[0] != 't' {
		return 0, fmt.Errorf("not a paced upstream's stamp: %q", field)
	}
	stamp, err := strconv.ParseInt(field[1:], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not a paced upstream's stamp: %q", field)
	}
	return stamp, nil
}

// percentilesMs sorts `values` (ns) and returns the named percentiles in milliseconds: the
// smallest value with at least p of them at or below it ("max" is the largest). Empty: nil.
func percentilesMs(values []int64, names map[string]float64) map[string]float64 {
	if len(values) == 0 {
		return nil
	}
	sort.Slice(values, func(i, j int) bool { return values[i] < values[j] })
	out := map[string]float64{}
	for name, p := range names {
		index := int(math.Ceil(p*float64(len(values)))) - 1
		index = max(0, min(index, len(values)-1))
		out[name] = float64(values[index]) / 1e6
	}
	return out
}
