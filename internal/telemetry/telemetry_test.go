package telemetry

import "testing"

func TestEnabled(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env     map[string]string
		on, err bool
	}{
		{map[string]string{}, false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, true, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4318/v1/traces"}, true, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "OTLP"}, true, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, false, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp, none"}, false, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, false, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, false, true},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp,console"}, false, true},
	} {
		on, err := Enabled(func(k string) string { return tc.env[k] })
		if on != tc.on || (err != nil) != tc.err {
			t.Errorf("%v: on %v err %v, want on %v err %v", tc.env, on, err, tc.on, tc.err)
		}
	}
}
