package lifecycle

import (
	"time"

	"go.uber.org/zap"
)

// Structured log fields. Tokens never appear in any of them.

func logErr(err error) zap.Field            { return zap.Error(err) }
func logOp(id string) zap.Field             { return zap.String("op_id", id) }
func logInst(id int64) zap.Field            { return zap.Int64("instance_id", id) }
func logMachine(id int64) zap.Field         { return zap.Int64("machine_id", id) }
func logOffer(id int64) zap.Field           { return zap.Int64("offer_id", id) }
func logPool(p string) zap.Field            { return zap.String("pool", p) }
func logReason(r string) zap.Field          { return zap.String("reason", r) }
func logKey(k string) zap.Field             { return zap.String("key", k) }
func logUntil(t time.Time) zap.Field        { return zap.Time("until", t) }
func logPrice(p float64) zap.Field          { return zap.Float64("price_per_hour", p) }
func logState(s string) zap.Field           { return zap.String("state", s) }
func logAttempt(n int) zap.Field            { return zap.Int("attempt", n) }
func logDuration(d time.Duration) zap.Field { return zap.Duration("duration", d) }
