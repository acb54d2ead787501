/* gradalign report, first script: keep every uncaught error and console.error of the page, so the
   self-test (#selftest) can report them in the DOM, and say on the page when it could not be drawn.
   Runs before the report's own script. */
(function () {
  'use strict';
  var errors = (window.__gradalignErrors = []);
  function keep(message) {
    errors.push(message);
    var app = document.getElementById('app');
    if (app && !app.querySelector('section') && !app.querySelector('.failed')) {
      var p = document.createElement('p');
      p.className = 'note failed';
      p.textContent = 'The report could not be drawn: ' + message;
      app.appendChild(p);
    }
  }
  window.addEventListener('error', function (e) {
    keep(String(e.message || e) + (e.lineno ? ' (line ' + e.lineno + ')' : ''));
  });
  window.addEventListener('unhandledrejection', function (e) {
    keep('unhandled rejection: ' + String(e.reason));
  });
  var original = console.error;
  console.error = function () {
    keep(Array.prototype.map.call(arguments, String).join(' '));
    return original.apply(console, arguments);
  };
})();
