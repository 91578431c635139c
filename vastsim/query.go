package vastsim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// validOps are the operators vast.ai accepts in select_filters and in offer
// queries.
var validOps = map[string]bool{
	"eq": true, "neq": true, "gt": true, "gte": true, "lt": true, "lte": true,
	"in": true, "notin": true,
}

// opAliases are spellings the CLI also understands; accepting them keeps a
// client written against the CLI's vocabulary working.
var opAliases = map[string]string{
	"nin": "notin", "not in": "notin", "noteq": "neq", "ne": "neq", "not_in": "notin",
}

// cond is one operator applied to one field.
type cond struct {
	field string
	op    string
	val   any
}

// canonicalOp maps an operator spelling to its canonical name; ok is false
// for operators vast.ai does not know.
func canonicalOp(op string) (string, bool) {
	op = strings.ToLower(strings.TrimSpace(op))
	if a, ok := opAliases[op]; ok {
		op = a
	}
	return op, validOps[op]
}

// decodeJSON decodes with UseNumber so that integer ids survive unchanged
// (float64 would round ids above 2^53 and print 1e+07 style values).
func decodeJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}

// numeric converts the number types the simulator stores (and json.Number
// from decoded queries) to float64.
func numeric(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case float32:
		return float64(n), true
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case int32:
		return float64(n), true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	}
	return 0, false
}

// numericLoose also accepts numeric strings, because vast.ai's own templates
// compare num_gpus as strings ({"in":["1","2"]}).
func numericLoose(v any) (float64, bool) {
	if f, ok := numeric(v); ok {
		return f, true
	}
	if s, ok := v.(string); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
			return f, true
		}
	}
	return 0, false
}

// compareValues orders two scalar values. ok is false when they cannot be
// compared (for example a bool against a string). null sorts before
// everything, as in SQL with NULLS FIRST for ascending order.
func compareValues(a, b any) (int, bool) {
	if a == nil || b == nil {
		switch {
		case a == nil && b == nil:
			return 0, true
		case a == nil:
			return -1, true
		default:
			return 1, true
		}
	}
	_, aNum := numeric(a)
	_, bNum := numeric(b)
	if aNum || bNum {
		fa, okA := numericLoose(a)
		fb, okB := numericLoose(b)
		if !okA || !okB {
			return 0, false
		}
		switch {
		case fa < fb:
			return -1, true
		case fa > fb:
			return 1, true
		}
		return 0, true
	}
	if sa, ok := a.(string); ok {
		if sb, ok := b.(string); ok {
			return strings.Compare(sa, sb), true
		}
		return 0, false
	}
	if ba, ok := a.(bool); ok {
		if bb, ok := b.(bool); ok {
			switch {
			case ba == bb:
				return 0, true
			case !ba:
				return -1, true
			}
			return 1, true
		}
	}
	return 0, false
}

func valuesEqual(a, b any) bool {
	c, ok := compareValues(a, b)
	return ok && c == 0
}

// matchCond reports whether actual satisfies op operand. Values that cannot
// be compared never match (and therefore always satisfy neq/notin).
func matchCond(actual any, op string, operand any) bool {
	switch op {
	case "eq":
		return valuesEqual(actual, operand)
	case "neq":
		return !valuesEqual(actual, operand)
	case "in", "notin":
		list, ok := operand.([]any)
		if !ok {
			list = []any{operand}
		}
		found := false
		for _, v := range list {
			if valuesEqual(actual, v) {
				found = true
				break
			}
		}
		return found == (op == "in")
	}
	if actual == nil || operand == nil {
		return false
	}
	c, ok := compareValues(actual, operand)
	if !ok {
		return false
	}
	switch op {
	case "gt":
		return c > 0
	case "gte":
		return c >= 0
	case "lt":
		return c < 0
	case "lte":
		return c <= 0
	}
	return false
}

// sortKey is one ordering column.
type sortKey struct {
	Col  string `json:"col"`
	Desc bool   `json:"desc"`
}

// sortRows orders rows by keys, falling back to the value of tie (ascending)
// so that the order is total and keyset pagination is stable.
func sortRows(rows []map[string]any, keys []sortKey, tie string) {
	sort.SliceStable(rows, func(i, j int) bool {
		return rowLess(rows[i], rows[j], keys, tie)
	})
}

func rowLess(a, b map[string]any, keys []sortKey, tie string) bool {
	for _, k := range keys {
		c, ok := compareValues(a[k.Col], b[k.Col])
		if !ok || c == 0 {
			continue
		}
		if k.Desc {
			return c > 0
		}
		return c < 0
	}
	if tie != "" {
		c, _ := compareValues(a[tie], b[tie])
		return c < 0
	}
	return false
}
