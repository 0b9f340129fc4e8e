package main

import (
	"reflect"
	"testing"
)

func TestCoalescedMessageGivesEachTokenItsArrival(t *testing.T) {
	r := newRecorder(window{0, 1 << 62})
	s := &stream{started: 90}
	// Upstream sent at 100, 150, 200 ns; the caller got the first alone at 110 and the next two
	// in one message at 260.
	if err := s.feed("t100 ", 110, r); err != nil {
		t.Fatal(err)
	}
	if err := s.feed("t150 t200 ", 260, r); err != nil {
		t.Fatal(err)
	}
	if want := []int64{(260 - 110) - (150 - 100), (260 - 260) - (200 - 150)}; !reflect.DeepEqual(r.added, want) {
		t.Fatalf("added gaps %v, want %v", r.added, want)
	}
	if want := []int64{10, 110, 60}; !reflect.DeepEqual(r.lateness, want) {
		t.Fatalf("lateness %v, want %v", r.lateness, want)
	}
	if !reflect.DeepEqual(r.firstTokens, []int64{20}) {
		t.Fatalf("first token after %v, want [20]", r.firstTokens)
	}
	if r.tokens != 3 || r.messages != 2 || r.multi != 1 || s.tokens != 3 {
		t.Fatalf("tokens %d, messages %d, several %d, stream %d", r.tokens, r.messages, r.multi, s.tokens)
	}
}

func TestStampCutAcrossMessagesIsJoined(t *testing.T) {
	r := newRecorder(window{0, 1 << 62})
	s := &stream{}
	for _, part := range []struct {
		text    string
		arrival int64
	}{{"t100 t1", 120}, {"50 ", 170}} {
		if err := s.feed(part.text, part.arrival, r); err != nil {
			t.Fatal(err)
		}
	}
	if want := []int64{(170 - 120) - (150 - 100)}; !reflect.DeepEqual(r.added, want) || s.carry != "" {
		t.Fatalf("added gaps %v (want %v), carry %q", r.added, want, s.carry)
	}
}

func TestOnlyTheWindowIsRecorded(t *testing.T) {
	r := newRecorder(window{start: 200, end: 300})
	s := &stream{}
	for _, arrival := range []int64{150, 250, 350} {
		if err := s.feed("t100 ", arrival, r); err != nil {
			t.Fatal(err)
		}
	}
	// Only the token at 250 counts, and its gap to the one before the window.
	if r.tokens != 1 || !reflect.DeepEqual(r.added, []int64{100}) || s.tokens != 3 {
		t.Fatalf("tokens %d, added %v, stream %d", r.tokens, r.added, s.tokens)
	}
	r.fail(100, "early")
	r.fail(250, "UNAVAILABLE")
	r.fail(300, "late")
	if r.errorsBefore != 1 || !reflect.DeepEqual(r.errors, map[string]int{"UNAVAILABLE": 1}) {
		t.Fatalf("errors before %d, in window %v", r.errorsBefore, r.errors)
	}
}

func TestTextThatIsNoStampIsAnError(t *testing.T) {
	if err := (&stream{}).feed("hello ", 1, newRecorder(window{0, 10})); err == nil {
		t.Fatal("hello accepted as a stamp")
	}
}

func TestPercentiles(t *testing.T) {
	values := make([]int64, 0, 100)
	for v := int64(100); v >= 1; v-- {
		values = append(values, v*1e6)
	}
	got := percentilesMs(values, map[string]float64{"p50": 0.5, "p99": 0.99, "max": 1})
	if want := map[string]float64{"p50": 50, "p99": 99, "max": 100}; !reflect.DeepEqual(got, want) {
		t.Fatalf("%v, want %v", got, want)
	}
	if percentilesMs(nil, map[string]float64{"p50": 0.5}) != nil {
		t.Fatal("percentiles of nothing")
	}
}
