/*
 * Test helper for test/desktop: connects to a PipeWire video node (the portal's screencast stream) as
 * a plain consumer, counts the frames it receives for a while and prints one JSON line per format
 * negotiated plus a summary. Built by the test with `cc ... $(pkg-config --cflags --libs libpipewire-0.3)`.
 *
 *   pw-frames NODE_ID SECONDS
 *
 * media.type/category/role are set because WirePlumber 0.4 destroys a consumer stream without a media
 * type (headless-desktop.md trap 3).
 */
#include <pipewire/pipewire.h>
#include <spa/param/video/format-utils.h>
#include <spa/pod/builder.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct data {
	struct pw_main_loop *loop;
	struct pw_stream *stream;
	struct spa_hook listener;
	uint64_t frames, nonempty, t0_ns, first_ns;
	uint32_t width, height;
	const char *last_error;
};

static uint64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_process(void *userdata) {
	struct data *d = userdata;
	struct pw_buffer *b;
	while ((b = pw_stream_dequeue_buffer(d->stream)) != NULL) {
		struct spa_buffer *buf = b->buffer;
		if (d->frames == 0) d->first_ns = now_ns();
		d->frames++;
		if (buf->n_datas > 0 && buf->datas[0].data != NULL && buf->datas[0].chunk->size > 0) d->nonempty++;
		pw_stream_queue_buffer(d->stream, b);
	}
}

static void on_param_changed(void *userdata, uint32_t id, const struct spa_pod *param) {
	struct data *d = userdata;
	if (param == NULL || id != SPA_PARAM_Format) return;
	struct spa_video_info_raw info;
	if (spa_format_video_raw_parse(param, &info) < 0) return;
	d->width = info.size.width;
	d->height = info.size.height;
	printf("{\"event\":\"format\",\"width\":%u,\"height\":%u,\"format\":%u}\n", info.size.width, info.size.height,
		info.format);
	fflush(stdout);
	uint8_t buffer[1024];
	struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buffer, sizeof(buffer));
	const struct spa_pod *params[1];
	params[0] = spa_pod_builder_add_object(&b, SPA_TYPE_OBJECT_ParamBuffers, SPA_PARAM_Buffers,
		SPA_PARAM_BUFFERS_dataType, SPA_POD_CHOICE_FLAGS_Int((1 << SPA_DATA_MemFd) | (1 << SPA_DATA_MemPtr)));
	pw_stream_update_params(d->stream, params, 1);
}

static void on_state_changed(void *userdata, enum pw_stream_state old, enum pw_stream_state state, const char *error) {
	struct data *d = userdata;
	(void)old;
	fprintf(stderr, "pw-frames: state %s%s%s\n", pw_stream_state_as_string(state), error ? ": " : "", error ? error : "");
	if (state == PW_STREAM_STATE_ERROR) {
		d->last_error = error;
		pw_main_loop_quit(d->loop);
	}
}

static const struct pw_stream_events stream_events = {
	PW_VERSION_STREAM_EVENTS,
	.state_changed = on_state_changed,
	.param_changed = on_param_changed,
	.process = on_process,
};

static void on_timeout(void *userdata, uint64_t expirations) {
	(void)expirations;
	struct data *d = userdata;
	pw_main_loop_quit(d->loop);
}

int main(int argc, char **argv) {
	if (argc != 3) {
		fprintf(stderr, "usage: pw-frames NODE_ID SECONDS\n");
		return 2;
	}
	uint32_t node = (uint32_t)strtoul(argv[1], NULL, 10);
	double seconds = atof(argv[2]);
	struct data d = {0};
	pw_init(&argc, &argv);
	d.loop = pw_main_loop_new(NULL);
	struct pw_loop *loop = pw_main_loop_get_loop(d.loop);
	d.stream = pw_stream_new_simple(loop, "wl-webrtc-test-pw-frames",
		pw_properties_new(PW_KEY_MEDIA_TYPE, "Video", PW_KEY_MEDIA_CATEGORY, "Capture", PW_KEY_MEDIA_ROLE, "Screen",
			NULL),
		&stream_events, &d);

	uint8_t buffer[1024];
	struct spa_pod_builder b = SPA_POD_BUILDER_INIT(buffer, sizeof(buffer));
	const struct spa_pod *params[1];
	params[0] = spa_pod_builder_add_object(&b, SPA_TYPE_OBJECT_Format, SPA_PARAM_EnumFormat,
		SPA_FORMAT_mediaType, SPA_POD_Id(SPA_MEDIA_TYPE_video),
		SPA_FORMAT_mediaSubtype, SPA_POD_Id(SPA_MEDIA_SUBTYPE_raw),
		SPA_FORMAT_VIDEO_format, SPA_POD_CHOICE_ENUM_Id(7, SPA_VIDEO_FORMAT_BGRx, SPA_VIDEO_FORMAT_BGRx,
			SPA_VIDEO_FORMAT_BGRA, SPA_VIDEO_FORMAT_RGBx, SPA_VIDEO_FORMAT_RGBA, SPA_VIDEO_FORMAT_xRGB,
			SPA_VIDEO_FORMAT_xBGR),
		SPA_FORMAT_VIDEO_size, SPA_POD_CHOICE_RANGE_Rectangle(&SPA_RECTANGLE(1280, 720), &SPA_RECTANGLE(1, 1),
			&SPA_RECTANGLE(16384, 16384)),
		SPA_FORMAT_VIDEO_framerate, SPA_POD_CHOICE_RANGE_Fraction(&SPA_FRACTION(30, 1), &SPA_FRACTION(0, 1),
			&SPA_FRACTION(1000, 1)));

	d.t0_ns = now_ns();
	if (pw_stream_connect(d.stream, PW_DIRECTION_INPUT, node, PW_STREAM_FLAG_AUTOCONNECT | PW_STREAM_FLAG_MAP_BUFFERS,
			params, 1) < 0) {
		fprintf(stderr, "pw-frames: connect failed\n");
		return 1;
	}
	struct spa_source *timer = pw_loop_add_timer(loop, on_timeout, &d);
	struct timespec ts = { .tv_sec = (time_t)seconds, .tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9) };
	pw_loop_update_timer(loop, timer, &ts, NULL, false);
	pw_main_loop_run(d.loop);

	double first_ms = d.frames ? (double)(d.first_ns - d.t0_ns) / 1e6 : -1;
	printf("{\"event\":\"summary\",\"frames\":%llu,\"nonempty\":%llu,\"width\":%u,\"height\":%u,\"firstFrameMs\":%.1f,"
		"\"seconds\":%.3f,\"error\":%s%s%s}\n",
		(unsigned long long)d.frames, (unsigned long long)d.nonempty, d.width, d.height, first_ms, seconds,
		d.last_error ? "\"" : "", d.last_error ? d.last_error : "null", d.last_error ? "\"" : "");
	fflush(stdout);
	pw_stream_destroy(d.stream);
	pw_main_loop_destroy(d.loop);
	pw_deinit();
	return d.last_error ? 1 : 0;
}
