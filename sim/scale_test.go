package sim

import (
	"testing"
)

// The scale experiment, reduced: every check must pass on the real code.
func TestScaleExperiment(t *testing.T) {
	runQuick(t, scale)
}
