package vastai

import (
	"fmt"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// unmarshalAutoscale parses a pool's autoscale block. Syntax (every
// option is optional except max; see AutoscaleConfig for the defaults):
//
//	autoscale {
//		min               <n>         # 0 scales to zero
//		max               <n>
//		target_load       <load>      # in-flight + waiting per instance
//		decision_interval <duration>
//		stable_window     <duration>
//		panic_window      <duration>
//		panic_threshold   <factor>
//		scale_up_delay    <duration>
//		scale_down_delay  <duration>
//		idle_to_zero      <duration>
//		drain_timeout     <duration>
//		max_pending       <n>         # requests held at zero
//		max_wait          <duration>
//		warm {
//			stopped         <n>
//			start_timeout   <duration>
//			max_stopped_age <duration>  # e.g. 7d
//		}
//	}
func unmarshalAutoscale(d *caddyfile.Dispenser, pool string) (*AutoscaleConfig, error) {
	c := new(AutoscaleConfig)
	in := fmt.Sprintf("pool %q: autoscale: ", pool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch opt := d.Val(); opt {
		case "min":
			err = nonNegativeInt(d, &c.Min)
		case "max":
			err = positiveInt(d, &c.Max)
		case "target_load":
			err = positiveFloat(d, &c.TargetLoad)
		case "decision_interval":
			err = durationArg(d, in, &c.DecisionInterval)
		case "stable_window":
			err = durationArg(d, in, &c.StableWindow)
		case "panic_window":
			err = durationArg(d, in, &c.PanicWindow)
		case "panic_threshold":
			err = positiveFloat(d, &c.PanicThreshold)
		case "scale_up_delay":
			err = durationArg(d, in, &c.ScaleUpDelay)
		case "scale_down_delay":
			err = durationArg(d, in, &c.ScaleDownDelay)
		case "idle_to_zero":
			err = durationArg(d, in, &c.IdleToZero)
		case "drain_timeout":
			err = durationArg(d, in, &c.DrainTimeout)
		case "max_pending":
			err = positiveInt(d, &c.MaxPending)
		case "max_wait":
			err = durationArg(d, in, &c.MaxWait)
		case "warm":
			if err = blockStart(d, in, c.Warm != nil); err == nil {
				c.Warm, err = unmarshalWarm(d, in)
			}
		default:
			err = d.Errf("%sunrecognized option %q", in, opt)
		}
		if err != nil {
			return nil, err
		}
	}
	if c.Max == 0 {
		return nil, d.Errf("%smax is required (the most instances the autoscaler may ask for)", in)
	}
	return c, nil
}

// unmarshalWarm parses the warm block inside autoscale.
func unmarshalWarm(d *caddyfile.Dispenser, prefix string) (*WarmConfig, error) {
	w := new(WarmConfig)
	in := prefix + "warm: "
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch opt := d.Val(); opt {
		case "stopped":
			err = positiveInt(d, &w.Stopped)
		case "start_timeout":
			err = durationArg(d, in, &w.StartTimeout)
		case "max_stopped_age":
			err = durationArg(d, in, &w.MaxStoppedAge)
		default:
			err = d.Errf("%sunrecognized option %q", in, opt)
		}
		if err != nil {
			return nil, err
		}
	}
	if w.Stopped == 0 {
		return nil, d.Errf("%sstopped is required (how many stopped instances to keep)", in)
	}
	return w, nil
}
