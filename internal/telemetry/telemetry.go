// Package telemetry sets up OpenTelemetry tracing for Natter's processes
// (cmd/edge, cmd/worker) from the standard OTEL_* environment variables.
// Tracing is off unless they configure an exporter; off, Setup returns a
// nil provider and the processes make no spans at all.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Enabled reports whether the environment turns tracing on:
// OTEL_TRACES_EXPORTER=otlp, or an OTLP endpoint
// (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) with
// OTEL_TRACES_EXPORTER unset; never with OTEL_SDK_DISABLED=true or
// OTEL_TRACES_EXPORTER=none.
func Enabled(getenv func(string) string) (bool, error) {
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") {
		return false, nil
	}
	exp := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")))
	if exp == "" {
		return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "", nil
	}
	// A list, as the specification allows; Natter's processes export
	// with otlp only.
	otlp := false
	for _, e := range strings.Split(exp, ",") {
		switch strings.TrimSpace(e) {
		case "none":
			return false, nil
		case "otlp":
			otlp = true
		default:
			return false, fmt.Errorf("telemetry: OTEL_TRACES_EXPORTER=%q: Natter exports traces with otlp only (or none)", exp)
		}
	}
	return otlp, nil
}

// Setup returns a tracer provider configured by the environment, and the
// function that flushes and stops it, or a nil provider when tracing is
// off. service is the default service.name; OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES override it. The exporter is OTLP over HTTP
// (http/protobuf, the default) or gRPC (OTEL_EXPORTER_OTLP_PROTOCOL=grpc,
// or OTEL_EXPORTER_OTLP_TRACES_PROTOCOL), and reads its endpoint,
// headers, TLS and timeout from the OTEL_EXPORTER_OTLP_* variables; the
// sampler is the SDK's, from OTEL_TRACES_SAMPLER and
// OTEL_TRACES_SAMPLER_ARG (parentbased_always_on by default). Setup also
// makes the provider and the W3C propagator OpenTelemetry's globals, for
// libraries that use them.
func Setup(ctx context.Context, service string) (trace.TracerProvider, func(context.Context) error, error) {
	on, err := Enabled(os.Getenv)
	if err != nil || !on {
		return nil, func(context.Context) error { return nil }, err
	}
	protocol := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var exp sdktrace.SpanExporter
	switch protocol {
	case "", "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	default:
		err = fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: use http/protobuf or grpc", protocol)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("telemetry: exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", service)),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	// The batch processor reads OTEL_BSP_* itself.
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	return tp, tp.Shutdown, nil
}
