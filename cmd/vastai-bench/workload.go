package main

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// message is one chat message of a request.
type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// session is one conversation: a shared system prompt and its user turns;
// each turn resends the history with the previous answers.
type session struct {
	id     string // sent in options.SessionHeader
	system string
	users  []string
}

// workload is the fixed request mix every policy receives: the same
// seed gives the same prompts, sessions and burst.
type workload struct {
	systems  []string
	sessions []session
	burst    []session // single-turn
}

// words is the vocabulary of generated text.
var words = strings.Fields(`account adapter batch buffer cache client cluster
config context daemon data deploy driver endpoint engine error event fleet
gateway graph handler host index instance kernel layer latency limit log
memory metric model monitor network node offset packet pipeline policy pool
port prompt proxy queue quota region replica request route runtime sample
scale schema server session shard signal socket stream system tensor thread
token trace upstream value vector volume worker`)

// text returns about n characters of words drawn from r.
func text(r *rand.Rand, n int) string {
	var b strings.Builder
	for b.Len() < n {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(words[r.IntN(len(words))])
	}
	return b.String()
}

// newWorkload draws the workload from o.Seed. System prompts are 2-4 KB
// and start differently, so their prefix blocks never collide.
func newWorkload(o options) *workload {
	r := rand.New(rand.NewPCG(o.Seed, 0x7a57ca11))
	w := &workload{}
	for i := range o.Prompts {
		head := fmt.Sprintf("You are assistant %d of the benchmark. Follow these instructions. ", i+1)
		w.systems = append(w.systems, head+text(r, 2048+r.IntN(2048)))
	}
	for i := range o.Sessions {
		s := session{id: fmt.Sprintf("session-%d", i+1), system: w.systems[r.IntN(len(w.systems))]}
		for range o.Turns {
			s.users = append(s.users, text(r, 120+r.IntN(240)))
		}
		w.sessions = append(w.sessions, s)
	}
	for i := range o.Burst {
		w.burst = append(w.burst, session{
			id:     fmt.Sprintf("burst-%d", i+1),
			system: w.systems[i%len(w.systems)],
			users:  []string{text(r, 120+r.IntN(240))},
		})
	}
	return w
}

// turn is the messages of turn i (0-based) given the previous answers.
func (s session) turn(i int, answers []string) []message {
	msgs := []message{{Role: "system", Content: s.system}}
	for j := range i {
		msgs = append(msgs, message{"user", s.users[j]}, message{"assistant", answers[j]})
	}
	return append(msgs, message{"user", s.users[i]})
}

// requests is the number of requests the workload sends.
func (w *workload) requests() int {
	n := len(w.burst)
	for _, s := range w.sessions {
		n += len(s.users)
	}
	return n
}
